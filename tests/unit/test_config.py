import pytest

from sergraph.config import ConfigError, compose, identity


def test_defaults_are_the_paper_setup():
    cfg = compose([])
    assert cfg.data.name == "synthetic" and cfg.model.name == "lstm_gin"
    assert cfg.graph.k == 4 and cfg.graph.max_nodes == 120 and cfg.features.pool == 5
    assert cfg.optim.lr == 1e-4 and cfg.optim.weight_decay == 1e-8
    assert cfg.trainer.max_epochs == 200
    assert cfg.model.params.lstm_hidden == 128 and cfg.model.params.num_layers == 5


def test_group_and_dotted_overrides():
    cfg = compose(["data=emodb", "data.root=some/where", "model.params.readout=mean", "graph.k=6"])
    assert cfg.data.name == "emodb" and cfg.data.root == "some/where"
    assert cfg.model.params.readout == "mean" and cfg.graph.k == 6


@pytest.mark.parametrize(
    "override,message",
    [
        ("data=emodbb", "choose one of"),
        ("model=lstm_gim", "lstm_gin"),
        ("graph.kk=4", "valid keys under 'graph'"),
        ("optim.lr=-1", "optim.lr"),
        ("optim.lr=fast", "optim.lr"),
        ("graph.k=3", "even"),
        ("graph.k=200", "smaller than graph.max_nodes"),
        ("features.pool=0", "features.pool"),
        ("model.params.readout=median", "choose one of"),
        ("model.params.widht=3", "valid model.params keys"),
        ("folds.scheme=kfold", "loso"),
        ("features.feature_set=mfcc", "is10"),
        ("trainer.max_epochs=many", "trainer.max_epochs"),
        ("nonsense", "key=value"),
    ],
)
def test_bad_config_is_rejected_with_choices(override, message):
    with pytest.raises(ConfigError, match=message):
        compose([override])


def test_keys_added_later_change_the_identity_only_off_their_defaults():
    base = identity(compose([]))
    defaults = ["optim.optimizer=adam", "optim.schedule=constant", "augment.noise=0.0"]
    assert identity(compose([*defaults, "features.concat_functionals=false"])) == base
    for changed in ("optim.optimizer=adamw", "augment.time_mask=5", "optim.warmup_epochs=2"):
        assert identity(compose([changed])) != base


def test_identity_ignores_runtime_keys_only():
    base = identity(compose([]))
    assert identity(compose(["features.workers=1", "run.seeds=[3]"])) == base
    assert identity(compose(["graph.k=6"])) != base
