from facts._util import parse_json_lines, to_int


def test_parse_json_lines_skips_warnings_before_the_document():
    assert parse_json_lines(["WARNING: low power", '{"a":', " 1}"]) == {"a": 1}


def test_parse_json_lines_ignores_trailing_noise():
    assert parse_json_lines(["[1, 2]", "done."]) == [1, 2]


def test_parse_json_lines_returns_none_without_json():
    assert parse_json_lines(["curl: (7) Failed to connect", "{broken"]) is None
    assert parse_json_lines([]) is None


def test_to_int_accepts_integral_values_only():
    assert to_int("25753026560") == 25753026560
    assert to_int(" 42 ") == 42
    assert to_int(7.0) == 7
    assert to_int("8.0") == 8
    assert to_int(7.5) is None
    assert to_int("N/A") is None
    assert to_int(True) is None
    assert to_int(None) is None
    assert to_int({"value": 1}) is None
