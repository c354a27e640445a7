"""The end-to-end recipe around training: souping anneal ingredients (``soup``), counting training
FLOPs the way the paper does (``flops``), and placing models on the paper's score-vs-compute Pareto
plot (``pareto``, with the paper's reference numbers in ``olmo2.eval.reference_results``). See ``docs/recipe.md``.

Submodules are imported on use; importing the package costs nothing.
"""
