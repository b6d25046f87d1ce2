import pytest

from kernelsight.exceptions import ConfigError
from kernelsight.stress import CATEGORIES, registry


def test_every_category_is_a_workload_module() -> None:
    for name in CATEGORIES:
        mod = registry.get(name)
        assert name == mod.NAME and callable(mod.run)
    with pytest.raises(ConfigError, match="unknown stress workload"):
        registry.get("gpu")
