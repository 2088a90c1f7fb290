"""parzen_mutual_information with one row of fixed samples shared by a batch of warped rows."""

import torch

from intermodal.losses import parzen_mutual_information


def test_shared_fixed_row_equals_the_expanded_batch():
    generator = torch.Generator().manual_seed(0)
    fixed = torch.rand(1, 500, generator=generator)
    warped = torch.rand(4, 500, generator=generator).requires_grad_(True)
    weights = (torch.rand(4, 500, generator=generator) > 0.2).float()
    shared = parzen_mutual_information(fixed, warped, 16, weights=weights)
    expanded = parzen_mutual_information(fixed.expand(4, -1), warped, 16, weights=weights)
    assert torch.allclose(shared, expanded, atol=1e-6)
    (grad_shared,) = torch.autograd.grad(shared.sum(), warped)
    (grad_expanded,) = torch.autograd.grad(expanded.sum(), warped)
    assert torch.allclose(grad_shared, grad_expanded, atol=1e-6)
    unweighted = parzen_mutual_information(fixed, warped, 16)
    assert unweighted.shape == (4,)
    assert torch.allclose(unweighted, parzen_mutual_information(fixed.expand(4, -1), warped, 16))


def test_a_fixed_batch_that_is_neither_one_nor_b_is_refused():
    import pytest

    from intermodal.errors import IntermodalError

    with pytest.raises(IntermodalError, match=r"\(1, N\)"):
        parzen_mutual_information(torch.rand(2, 10), torch.rand(3, 10))
