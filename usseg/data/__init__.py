# Copyright (c) usseg contributors. Licensed under the Apache License, Version 2.0.
"""Step 1-2 of the data flow: read ultrasound files and turn folders into datalists and splits."""
