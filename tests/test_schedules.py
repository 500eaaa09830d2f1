import pytest

from prunekit.schedules import Cubic, Iterative, OneShot


def test_one_shot():
    assert [OneShot(0.6).sparsity_at(t) for t in (0, 5)] == [0.6, 0.6]


def test_iterative_geometric_and_linear():
    geo = Iterative(0.875, 3)
    assert [geo.sparsity_at(k) for k in range(5)] == pytest.approx([0.0, 0.5, 0.75, 0.875, 0.875])
    lin = Iterative(0.6, 3, spacing="linear")
    assert [lin.sparsity_at(k) for k in range(4)] == pytest.approx([0.0, 0.2, 0.4, 0.6])


def test_cubic_matches_zhu_and_gupta():
    s = Cubic(0.1, 0.9, begin_step=10, end_step=50, frequency=10)
    expected = {0: 0.0, 9: 0.0, 10: 0.1, 19: 0.1, 20: 0.9 - 0.8 * 0.75 ** 3, 30: 0.9 - 0.8 * 0.5 ** 3,
                40: 0.9 - 0.8 * 0.25 ** 3, 50: 0.9, 80: 0.9}
    for t, v in expected.items():
        assert s.sparsity_at(t) == pytest.approx(v), t
    values = [s.sparsity_at(t) for t in range(10, 60)]
    assert all(b >= a for a, b in zip(values, values[1:]))  # never decreases


def test_schedule_validation():
    with pytest.raises(ValueError):
        Cubic(0.0, 0.5, begin_step=5, end_step=5)
    with pytest.raises(ValueError):
        Iterative(0.5, 0)
