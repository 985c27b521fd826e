"""Kill a training script with SIGKILL at chosen steps and resume it with --resume auto, for the tests."""
import os
import signal
import subprocess
import sys

ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')


def run_with_kills(script, argv, kill_after_steps, timeout=300):
    """Run `python script argv --resume auto` once per entry of kill_after_steps, each SIGKILLed as
    soon as it has printed that many 'step' lines (argv should print every step), then once more to
    the end. Asserts that every killed run was really killed mid-way and the last one succeeded;
    returns the last run's stdout."""
    command = [sys.executable, script, *argv, '--resume', 'auto']
    for steps in kill_after_steps:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
        printed, output = 0, []
        for line in process.stdout:
            output.append(line)
            printed += ' step ' in line
            if printed == steps:
                process.send_signal(signal.SIGKILL)
                break
        process.stdout.close()
        assert process.wait(timeout=timeout) == -signal.SIGKILL, ''.join(output)[-2000:]
    final = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=timeout)
    assert final.returncode == 0, final.stderr[-2000:]
    return final.stdout
