# The Hydra configs. This dir ships inside the wheel as the package ``genlab.conf`` (see
# pyproject.toml), so the installed `genlab` command finds them from any directory.
