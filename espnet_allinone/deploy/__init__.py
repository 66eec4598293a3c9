"""Deployment: extracted subsystems run on onnxruntime, and picking one for a budget.

runtime     load an exported model and transcribe (numpy + onnxruntime only)
expand      expand the bit-packed weights of an exported .onnx in numpy before the session
heap        hand the C heap's free memory back once a session is built (glibc malloc_trim)
frontend    STFT, log-mel and global MVN in numpy, as ESPnet's DefaultFrontend
ctc         CTC greedy and prefix beam search in numpy, as ESPnet's beam search
audio       read wav files: sample-rate check, resampling, corrupt-file errors
build       export an extracted model dir or zoo zip once, next to the model (torch)
onnx_export encoder + CTC to ONNX, onnxruntime int8 / MatMulNBits, dynamic int8 (torch)
onnx_lowbit N-bit weights of an extracted subsystem in the .onnx file (torch)
select      per-subsystem budgets, the Pareto front and the pick (results.json)

``runtime``, ``expand``, ``heap``, ``frontend``, ``ctc`` and ``audio`` import neither torch nor
ESPnet, so an exported model runs where only numpy and onnxruntime exist.
"""
