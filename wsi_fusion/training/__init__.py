"""Training-time pieces shared by the learned fusers' workflows: sample recipes and the loop.

Nothing here is imported by the fusion pipeline; ``workflows/train_*.py`` wire it to each model.
"""
