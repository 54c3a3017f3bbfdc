"""One module per noun; each command is a pair `<verb>_args(parser)` and `<verb>(args) -> exit code`."""
