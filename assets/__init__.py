"""Dagster assets: each recipe file becomes one asset group of six stages (see assets/factory.py)."""

from .factory import recipe_assets, stage_asset_key

__all__ = ["recipe_assets", "stage_asset_key"]
