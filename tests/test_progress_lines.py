"""scripts/common/show_progress.sh (run_demo.sh's progress): in place on a terminal, plain lines elsewhere."""
import os
import pty
import re
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHOW_PROGRESS = os.path.join(REPO, "scripts", "common", "show_progress.sh")
EPOCHS, BATCHES, PRINTED_BATCHES = 20, 16, (5, 10, 15)  # CoOp's PRINT_FREQ 5 on 16 batches


def job_output(path):
    """What an experiment script prints for one training job, in the trainer's line format."""
    lines = ["== start: coop base2new_train synthetic_shapes seed 1", "Loading trainer: CoOp"]
    for epoch in range(1, EPOCHS + 1):
        for batch in PRINTED_BATCHES:
            lines.append(f"epoch [{epoch}/{EPOCHS}] batch [{batch}/{BATCHES}] time 0.250 (0.260) "
                         "data 0.100 (0.120) loss 1.2345 (1.3456) acc 62.5000 (60.0000) "
                         "lr 5.0000e-03 eta 0:01:00")
    lines += ["* accuracy: 75.0%", "== done: coop base2new_train synthetic_shapes seed 1 in 0:01:30"]
    path.write_text("\n".join(lines) + "\n")
    return lines


def share_done(line):
    epoch, batch = (int(n) for n in re.search(r"epoch \[(\d+)/\d+\] batch \[(\d+)/\d+\]", line).groups())
    return ((epoch - 1) * BATCHES + batch) / (EPOCHS * BATCHES)


def test_into_a_pipe_progress_is_plain_lines_about_every_tenth(tmp_path):
    source = tmp_path / "job.log"
    job_output(source)
    with open(source) as stdin:
        done = subprocess.run(["bash", SHOW_PROGRESS], stdin=stdin, capture_output=True)
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode()
    assert "\r" not in out
    lines = out.splitlines()
    assert lines[0].startswith("== start:") and lines[-1].startswith("== done:")
    shares = [share_done(line) for line in lines[1:-1]]
    assert all(line.startswith("   epoch [") and line.endswith("eta 0:01:00") for line in lines[1:-1])  # whole
    assert len(shares) == 10  # the first line, then one per 10% (the last batch is not printed)
    assert shares[0] == share_done(f"epoch [1/{EPOCHS}] batch [{PRINTED_BATCHES[0]}/{BATCHES}]")
    steps = [b - a for a, b in zip(shares, shares[1:])]
    assert all(0.09 <= step <= 0.11 for step in steps[1:]), shares


def run_on_a_terminal(source):
    """show_progress.sh with its stdout a pseudo-terminal; returns what the terminal received."""
    main, terminal = pty.openpty()
    with open(source) as stdin:
        process = subprocess.Popen(["bash", SHOW_PROGRESS], stdin=stdin, stdout=terminal, stderr=terminal)
    os.close(terminal)
    received = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # Linux: EIO once the last writer has closed the terminal
            break
        if not chunk:
            break
        received += chunk
    os.close(main)
    assert process.wait(timeout=30) == 0
    return received.decode()


def test_on_a_terminal_the_progress_line_is_rewritten_in_place(tmp_path):
    source = tmp_path / "job.log"
    lines = job_output(source)
    received = run_on_a_terminal(source)
    epoch_lines = [line for line in lines if line.startswith("epoch [")]
    # every progress line overwrites the one before (the terminal itself turns "\n" into "\r\n")
    assert received.count("\r   epoch [") == len(epoch_lines)
    assert received.replace("\r\n", "\n").count("\n") == 3  # start line, end of the progress line, done line
    assert "== done:" in received.splitlines()[-1]
