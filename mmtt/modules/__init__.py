from .token_recovery import RECOVERY_MODES, TokenRecovery
from .token_transform import METHODS, SELECTIONS, Reduction, TokenTransform

__all__ = ['TokenTransform', 'TokenRecovery', 'Reduction', 'METHODS', 'SELECTIONS',
           'RECOVERY_MODES']
