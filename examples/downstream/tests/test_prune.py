"""Every registered model x ratio x mode: forward valid, shape rule, golden, reduction band."""


def test_prune(tprune_case):
    tprune_case.check_all()
