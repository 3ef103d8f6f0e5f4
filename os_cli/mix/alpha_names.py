"""The names of the alpha methods (`alpha.method` in a recipe), torch-free so the recipe schema can
import them; `alpha.py` implements each one."""

ALPHA_METHODS = ("fixed", "kl_symmetry", "reverse_kl_symmetry", "ess_balance", "entropy")
