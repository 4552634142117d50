"""One module per `rad` command: argument namespace in, exit status out."""
