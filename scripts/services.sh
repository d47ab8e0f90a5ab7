#!/usr/bin/env bash
# Starts the database servers the tests use, if they are installed here and not answering.
set -u
wait_for() {  # name, command
  for _ in $(seq 1 30); do eval "$2" >/dev/null 2>&1 && return 0; sleep 1; done
  echo "services: $1 did not come up" >&2; return 1
}
if command -v pg_ctlcluster >/dev/null 2>&1 && ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  echo "services: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  wait_for PostgreSQL "pg_isready -h 127.0.0.1 -p 5432 -q"
fi
if command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ]; then
  if ! mariadb-admin -h 127.0.0.1 -P 3306 -u root ping >/dev/null 2>&1; then
    echo "services: starting MariaDB"
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
    wait_for MariaDB "mariadb-admin -h 127.0.0.1 -P 3306 -u root ping"
  fi
fi
exit 0
