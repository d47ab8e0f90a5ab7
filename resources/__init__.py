"""Resources: HR database, state store, calendar providers, configuration and run scope."""

import pandas as _pd

# pyarrow is installed for the extract's Arrow path only; pandas' own strings stay as they
# were (python storage), so installing it changes no dtype anywhere else.
_pd.set_option("mode.string_storage", "python")
