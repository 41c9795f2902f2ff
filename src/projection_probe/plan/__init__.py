"""Resource planning: memory and disk of a config's sweep before it runs."""
