"""The names of the three distributions a step knows, torch-free (the recipe schema, the record format
and top-K read them): theta (pi_theta), t (the teacher, pi_t) and q (q*, what was sampled)."""

DISTRIBUTIONS = ("theta", "t", "q")
# The distributions whose top-K log-probs a record keeps by default (output.topk_of): the teacher's.
TOPK_OF_DEFAULT = ("t",)
