"""One module per optimizer: its defaults, checks, state layout and update rule."""
