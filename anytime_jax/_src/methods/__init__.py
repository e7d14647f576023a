"""The methods, one module per family, each registering its factories (``registry.register``)."""
