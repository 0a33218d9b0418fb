"""Logic behind the command-line tools in ``tools/`` that training itself does not need."""
