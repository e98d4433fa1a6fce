from facts.units import UnitStates, parse_unit_blocks, unit_state

BLOCKS = """ExecMainStatus=0
Id=ssh.service
Names=ssh.service sshd.service
LoadState=loaded
ActiveState=active
SubState=running
FragmentPath=/lib/systemd/system/ssh.service
UnitFileState=enabled

ExecMainStatus=203
Id=litellm.service
Names=litellm.service
LoadState=loaded
ActiveState=activating
SubState=auto-restart
FragmentPath=/etc/systemd/system/litellm.service
UnitFileState=disabled
InactiveExitTimestampMonotonic=12500000

ExecMainStatus=0
Id=gone.service
Names=gone.service
LoadState=not-found
ActiveState=inactive
SubState=dead
FragmentPath=
UnitFileState=
""".splitlines()


def test_blocks_are_split_on_blank_lines_even_though_id_is_not_first():
    states = parse_unit_blocks(BLOCKS)
    assert list(states) == ["ssh.service", "litellm.service", "gone.service"]
    assert states["litellm.service"].exec_main_status == 203
    assert states["ssh.service"].exec_main_status == 0


def test_properties_derived_from_states():
    states = parse_unit_blocks(BLOCKS)
    ssh, litellm, gone = states["ssh.service"], states["litellm.service"], states["gone.service"]
    assert (ssh.exists, ssh.is_active, ssh.is_enabled) == (True, True, True)
    assert (litellm.exists, litellm.is_active, litellm.is_enabled) == (True, False, False)
    assert (gone.exists, gone.is_active, gone.is_enabled) == (False, False, False)
    assert gone.fragment_path is None and gone.unit_file_state is None


def test_unit_state_finds_aliases():
    states = parse_unit_blocks(BLOCKS)
    assert unit_state(states, "sshd.service").id == "ssh.service"
    assert unit_state(states, "ollama.service") is None


def test_command_quotes_unit_names_and_supports_user_mode():
    command = UnitStates().command(units=["a.service", "we ird.service"], user_mode=True).get_raw_value()
    assert command.startswith("systemctl --user show -p Id,Names,LoadState,")
    assert "-- a.service 'we ird.service' 2>&1 || true" in command


def test_when_a_unit_began_starting_and_whether_it_is_starting_or_restarting():
    states = parse_unit_blocks(BLOCKS)
    litellm = states["litellm.service"]
    assert litellm.started_monotonic_us == 12_500_000 and states["ssh.service"].started_monotonic_us is None
    assert litellm.starting_for_s(42.5) == 30.0 and litellm.starting_for_s(None) is None
    assert not litellm.is_starting  # auto-restart: waiting to restart after a failure
