from .methods import METHOD_SPECS, METHODS, MethodSpec, default_metric, method_spec
from .token_recovery import RECOVERY_MODES, TokenRecovery
from .token_transform import SELECTIONS, Reduction, TokenTransform

__all__ = ['TokenTransform', 'TokenRecovery', 'Reduction', 'METHODS', 'SELECTIONS',
           'RECOVERY_MODES', 'METHOD_SPECS', 'MethodSpec', 'method_spec', 'default_metric']
