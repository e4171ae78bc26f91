"""The old name of `trax_sl.layers.contract`, kept so that existing imports keep working.

New code: `from trax_sl.layers import contract` (or `tl.contract.verify_contract`).
"""

from trax_sl.layers.contract import *
from trax_sl.layers.contract import ContractReport, verify_contract

__all__ = ["ContractReport", "verify_contract"]
