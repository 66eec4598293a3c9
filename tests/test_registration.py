"""Registration into ESPnet: the .pth import hook, stock entry points, ours.

Each ``import espnet2.tasks.asr`` costs ~19 s, so the stock-path checks run
bundled in one fresh interpreter (plus one spawned child, like a DDP worker)
and our own entry point in a second one.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

HOOK_PTH = "espnet_allinone_hook.pth"

STOCK_SCRIPT = textwrap.dedent(
    '''
    import json, multiprocessing, sys
    from pathlib import Path


    def spawned_child(queue):
        import espnet2.tasks.asr as asr_task  # a DDP worker imports the task like this
        queue.put("elastic_conformer" in asr_task.encoder_choices.classes)


    def main(workdir):
        out = {"ours_before_espnet": sorted(m for m in sys.modules if m.startswith("espnet_allinone"))}
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        child = ctx.Process(target=spawned_child, args=(queue,))
        child.start()

        import numpy as np
        import torch
        import espnet2.tasks.asr as asr_task
        from espnet2.bin.asr_inference import Speech2Text

        out["registered"] = sorted(
            k for k in ("elastic_conformer", "allinone") if k in
            {**asr_task.encoder_choices.classes, **asr_task.model_choices.classes}
        )
        from espnet_allinone import registry
        sizes = (len(asr_task.encoder_choices.classes), len(asr_task.model_choices.classes))
        out["second_register_added"] = registry.register()
        out["sizes_unchanged"] = sizes == (
            len(asr_task.encoder_choices.classes), len(asr_task.model_choices.classes))

        # what `python -m espnet2.bin.asr_train --print_config --encoder ...` prints
        sys.argv = ["asr_train", "--print_config", "--encoder", "elastic_conformer"]
        out["print_config"] = asr_task.ASRTask.get_default_config()

        workdir = Path(workdir)
        (workdir / "tokens.txt").write_text("<blank>\\n<unk>\\na\\nb\\n<sos/eos>\\n")
        (workdir / "train.yaml").write_text(CONFIG)
        exp = workdir / "exp"
        asr_task.ASRTask.main(cmd=[
            "--config", str(workdir / "train.yaml"), "--token_list", str(workdir / "tokens.txt"),
            "--output_dir", str(exp), "--dry_run", "true", "--use_matplotlib", "false",
            "--use_tensorboard", "false",
        ])
        model, _ = asr_task.ASRTask.build_model_from_file(exp / "config.yaml", None, "cpu")
        torch.save(model.state_dict(), exp / "model.pth")
        s2t = Speech2Text(asr_train_config=exp / "config.yaml", asr_model_file=exp / "model.pth",
                          beam_size=2, ctc_weight=0.3, maxlenratio=0.1)
        encoder = s2t.asr_model.encoder
        out["s2t_encoder"] = type(encoder).__name__
        out["s2t_subsystem"] = str(encoder.active_subsystem)
        out["s2t_space"] = len(encoder.space)
        reloaded = s2t.asr_model.state_dict()
        out["s2t_weights_equal"] = all(
            torch.equal(v, reloaded[k]) for k, v in model.state_dict().items())
        out["s2t_keys_equal"] = set(reloaded) == set(model.state_dict())
        out["s2t_ran"] = len(s2t(np.random.RandomState(0).randn(8000).astype("float32"))) > 0

        child.join(300)
        out["spawned_child_registered"] = queue.get(timeout=5)
        print("RESULT " + json.dumps(out))


    CONFIG = """
    encoder: elastic_conformer
    encoder_conf:
        output_size: 16
        attention_heads: 2
        linear_units: 32
        num_blocks: 2
        cnn_module_kernel: 3
        rel_pos_type: latest
        depths: [1, 2]
        widths: [0.5, 1]
        precisions: [int4, fp]
    decoder: transformer
    decoder_conf:
        attention_heads: 2
        linear_units: 32
        num_blocks: 1
    model_conf:
        ctc_weight: 0.3
    frontend_conf:
        n_mels: 20
    """

    if __name__ == "__main__":
        main(sys.argv[1])
    '''
)


def _run(cmd: list[str], cwd: Path, env: dict | None = None) -> str:
    proc = subprocess.run(
        cmd, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
        timeout=600, check=False,
    )
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_hook_pth_is_installed_in_site_packages():
    paths = [Path(p) / HOOK_PTH for p in site.getsitepackages()]
    found = [p for p in paths if p.exists()]
    assert found, f"{HOOK_PTH} missing from {site.getsitepackages()}: run `pip install -e .`"
    text = found[0].read_text()
    assert text.startswith("import sys; exec(") and "_RegisterAfterImport" in text
    assert len(text.splitlines()) == 1  # site executes only single `import` lines


def test_stock_espnet_entry_points_see_the_registration(tmp_path):
    script = tmp_path / "stock_checks.py"
    script.write_text(STOCK_SCRIPT)
    stdout = _run([sys.executable, str(script), str(tmp_path)], cwd=tmp_path)
    result = json.loads(stdout.split("RESULT ", 1)[1])
    assert result["ours_before_espnet"] == []  # the .pth hook imports nothing of ours
    assert result["registered"] == ["allinone", "elastic_conformer"]
    assert result["second_register_added"] == [] and result["sizes_unchanged"]
    config = result["print_config"]
    assert config["encoder"] == "elastic_conformer"
    conf = config["encoder_conf"]
    for key in ("depths", "widths", "precisions", "elastic_conv", "quant_conf",
                "part_precisions", "interctc_layer_idx", "stochastic_depth_rate",
                "use_flash_attn", "rel_pos_type"):
        assert key in conf, key
    assert conf["num_blocks"] == 6 and conf["rel_pos_type"] == "legacy"  # stock defaults
    assert result["s2t_encoder"] == "ElasticConformerEncoder"
    assert result["s2t_subsystem"] == "d2-w1-fp" and result["s2t_space"] == 8
    assert result["s2t_weights_equal"] and result["s2t_keys_equal"] and result["s2t_ran"]
    assert result["spawned_child_registered"] is True


def test_our_asr_train_registers_itself_without_the_hook(tmp_path):
    stdout = _run(
        [sys.executable, "-m", "espnet_allinone.bin.asr_train", "--print_config",
         "--encoder", "elastic_conformer", "--encoder_conf", "num_blocks=4",
         "--encoder_conf", "depths=[2,4]"],
        cwd=Path(__file__).resolve().parents[1],
        env={"ESPNET_ALLINONE_NO_HOOK": "1"},
    )
    config = yaml.safe_load(stdout)
    assert config["encoder"] == "elastic_conformer"
    assert config["encoder_conf"]["num_blocks"] == 4
    assert config["encoder_conf"]["depths"] == [2, 4]
    assert config["encoder_conf"]["precisions"] is None
