"""The heads' names, for the command line's help and choices without loading scikit-learn.

`headstart.heads.registry.HEADS` holds the classes under exactly these names (a test checks).
"""

HEAD_NAMES = ("softmax", "logreg", "mlp", "knn", "svm", "zeroshot")
ZEROSHOT = "zeroshot"
"""The head built from the class names' text embeddings (CLIP, SigLIP caches); no training pictures."""
DEFAULT_HEADS = ("softmax", "logreg", "mlp")
