"""fflab.options names what the library accepts, without JAX: each tuple equals the library's own table."""

from fflab import data, init, mlp, norm, options, train


def test_option_names_match_the_library():
    assert options.ACTIVATIONS == tuple(mlp.ACTIVATIONS)
    assert options.INIT_SCHEMES == tuple(init.SCHEMES)
    assert options.OPTIMIZERS == train.OPTIMIZERS
    assert options.SCHEDULES == train.SCHEDULES
    assert options.NORMS == norm.NORMS
    assert options.DATASETS == data.NAMES
