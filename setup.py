"""Packages are found, not listed by hand: every package under src/fundus2video, the two top-level
folders that import as fundus2video.data_modules and fundus2video.callbacks, and the experiment files,
shipped as fundus2video/experiments so the built-in experiments exist outside a checkout too.
Everything else about the package is in setup.cfg."""

from setuptools import find_packages, setup

MAPPED = {"fundus2video.data_modules": "data_modules", "fundus2video.callbacks": "callbacks",
          "fundus2video.experiments": "experiments"}

setup(packages=find_packages("src") + list(MAPPED), package_dir={"": "src", **MAPPED},
      package_data={"fundus2video.experiments": ["*.yaml", "*/*.yaml"]})
