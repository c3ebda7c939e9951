"""Readers of each dataset's standard files (SPEC section 5), one module per format.

idx (Fashion-MNIST), cifar (pickle batches), matlab (SVHN .mat), folders (CINIC-10, Tiny-ImageNet,
imagefolder), fine_grained (aircraft, cars, flowers102). Each returns a `common.Source`.
"""
