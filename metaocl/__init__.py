"""metaocl: reproduce and extend meta-out-of-context learning (Krasheninnikov et al.).

Start with ``metaocl sweep quickstart``; ``metaocl --help`` lists the commands.
"""

__version__ = "0.1.0"
