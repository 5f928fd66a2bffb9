# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""The ``usseg`` command: thin wrappers over API functions (see ``usseg --help``)."""
