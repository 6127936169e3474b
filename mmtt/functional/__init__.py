"""Token Transforming as pure tensor functions (imports only torch).

Token reduction is ``Y = W X`` (eq. 1). The builders here make W for each method as a
:class:`TokenMatrix`; :meth:`TokenMatrix.apply` applies any of them; recovery maps reduced
tokens back to the full set for dense prediction.
"""
from .attention import size_bias, sized_attention
from .builders import (
    ORPHAN_RULES,
    SIMILARITIES,
    evit_matrix,
    matrix_from_queries,
    prune_matrix,
    similarity,
    tome_matrix,
    transform_matrix,
    transform_token_matrix,
)
from .peers import (
    cluster_grid,
    hourglass_matrix,
    pitome_energy,
    pitome_matrix,
    reconstruction_relation,
    tps_matrix,
)
from .recovery import compose_recovery_index, nearest_recovery_index, recover_tokens
from .scores import (
    attention_with_scores,
    class_token_scores,
    distinctness_scores,
    informative_scores,
    mixed_scores,
    sampled_attention_scores,
    uniform_scores,
)
from .token_matrix import TokenMatrix

__all__ = [
    'informative_scores', 'class_token_scores', 'uniform_scores', 'distinctness_scores', 'mixed_scores',
    'attention_with_scores',
    'sampled_attention_scores',
    'similarity', 'transform_matrix', 'transform_token_matrix', 'matrix_from_queries', 'prune_matrix',
    'evit_matrix',
    'tome_matrix', 'TokenMatrix', 'nearest_recovery_index', 'compose_recovery_index',
    'recover_tokens', 'size_bias', 'sized_attention', 'SIMILARITIES', 'ORPHAN_RULES',
    'tps_matrix', 'pitome_energy', 'pitome_matrix', 'hourglass_matrix', 'cluster_grid',
    'reconstruction_relation',
]
