"""LDM Lab's harness: measure pixel against latent diffusion, and the command line that runs it.

Rooms, each importing only the ones after it: ``cli`` (commands; ``arguments`` parses their flags)
-> ``zoo`` (build and export the shipped models) -> ``presets`` (every command's named settings and
the one denoiser recipe) -> ``sweeps`` / ``bench`` -> ``metrics`` / ``reporting`` -> ``pipelines``
(the shared core, outside this package).
"""
