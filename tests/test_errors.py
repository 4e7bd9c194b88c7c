"""gpuxc/errors.py helpers that shape every one-line error."""

from __future__ import annotations

from gpuxc.errors import first_line


def test_first_line_of_a_plain_library_error() -> None:
    assert first_line(ValueError("bad shape\n  at frame 3\n")) == "bad shape"
    assert first_line(ValueError("")) == "ValueError"


def test_first_line_of_an_openvino_error_is_what_went_wrong() -> None:
    # OpenVINO's C++ exceptions open with where they were thrown; the reason is the last line.
    exc = RuntimeError(
        "Exception from src/inference/src/cpp/infer_request.cpp:189:\n"
        "Check '::getPort(port, name, {_impl->get_inputs(), _impl->get_outputs()})' failed at "
        "src/inference/src/cpp/infer_request.cpp:191:\nPort for tensor name like was not found.\n\n"
    )
    assert first_line(exc) == "Port for tensor name like was not found."


def test_first_line_of_an_error_with_several_arguments_is_its_message() -> None:
    # coremltools raises ValueError(message, name, var) (printed as a tuple).
    exc = ValueError('Op "y" (op_type: batch_norm) Input mean must be const at compile time', "mean", "mean")
    assert first_line(exc) == 'Op "y" (op_type: batch_norm) Input mean must be const at compile time'
