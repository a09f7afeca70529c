"""The subcommands of `fundus2video` (registered in `cli.COMMANDS`). The core of the package never
imports from here: commands use the core, not the other way round."""
