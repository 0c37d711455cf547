"""Shipping a trained head: export it with its backbone to one model file, predict new pictures."""
