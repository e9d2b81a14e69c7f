"""The LDM Lab web demo's parts; ``app.py`` at the repository root builds and launches it."""
