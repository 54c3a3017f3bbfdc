"""hwctl: the command line and Python client of Headwater."""
