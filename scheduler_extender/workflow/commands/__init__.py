"""gedge-flow subcommands; `common` holds the options they share."""
