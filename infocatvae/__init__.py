"""infocatvae: categorical variational autoencoders (CatVAE, InfoCatVAE, free-prior CatVAE, AAE).

The spec is Lavda et al., "InfoCatVAE: Representation Learning with Categorical
Variational Autoencoders"; equation numbers in docstrings refer to that paper.
"""

__version__ = "0.1.0"
