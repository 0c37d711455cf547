"""The heads' names, for the command line's help and choices without loading scikit-learn.

`headstart.heads.registry.HEADS` holds the classes under exactly these names (a test checks).
"""

HEAD_NAMES = ("softmax", "logreg", "mlp")
DEFAULT_HEADS = ("softmax", "logreg", "mlp")
