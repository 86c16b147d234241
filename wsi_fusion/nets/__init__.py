"""torch ``nn.Module`` definitions of the learned fusers, one file per architecture.

Importing a module here imports torch; the fusers import them lazily.
"""
