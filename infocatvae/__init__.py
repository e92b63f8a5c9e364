"""infocatvae: categorical variational autoencoders (CatVAE, InfoCatVAE, free-prior CatVAE, AAE).

The spec is Edouard Pineau and Marc Lelarge, "InfoCatVAE: Representation Learning with
Categorical Variational Autoencoders", arXiv:1806.08240 (2018); equation, section, table and
appendix numbers in docstrings refer to that paper.
"""

__version__ = "0.1.0"
