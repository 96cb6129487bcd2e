//! Which allocator a process wants, from its command line and `AFTERCART_ALLOCATOR`: pure
//! functions over bytes, so that the allocator can decide before anything is allocated.

/// The subcommands that run a consumer stage: mimalloc by default. Their profiles spend about a
/// third of their CPU in glibc's malloc and free (`bench/NOTES.md`); the ingress measured a
/// few per cent less CPU with mimalloc but ≈ 26 MiB more resident memory, which its 64 MiB
/// target cannot spare, so everything else keeps the system's allocator.
pub const CONSUMER_COMMANDS: &[&str] =
    &["abandonment", "referrals", "journey", "audiences", "nudges"];
/// Every other subcommand of the binary (clap's `help` included): the system's allocator by
/// default. Listed so that a flag's value before the subcommand (`--log-format json`) is not
/// taken for it; the command line's own tests check the two lists against its subcommands.
pub const OTHER_COMMANDS: &[&str] = &[
    "ingress", "dev", "send", "loadgen", "topics", "kafka", "spool", "docs", "help",
];

/// The flag that names an allocator (`--allocator mimalloc`); `AFTERCART_ALLOCATOR` is its
/// variable. Values: `auto` (by subcommand, the default), `mimalloc`, `system`.
pub const FLAG: &str = "--allocator";
/// The variable of [`FLAG`].
pub const VARIABLE: &str = "AFTERCART_ALLOCATOR";

/// An allocator a process may run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// The C library's (glibc's) malloc.
    System,
    /// mimalloc, statically linked.
    Mimalloc,
}

impl Choice {
    /// The name `--allocator` takes for it.
    pub fn name(self) -> &'static str {
        match self {
            Choice::System => "system",
            Choice::Mimalloc => "mimalloc",
        }
    }
}

/// The allocator for a process with this command line (`/proc/self/cmdline`: arguments, each
/// ended by a NUL, the program first) and this value of [`VARIABLE`], as the command-line
/// parser resolves them: the flag over the variable, `auto` or nothing by subcommand (the first
/// argument that names one of the binary's). Read without the parser, so a flag's value that is
/// a subcommand's name is taken for it (`--log journey referrals` chooses as `journey` would);
/// the binary warns where the parsed command line wants otherwise ([`expected`]). A value
/// neither `mimalloc` nor `system` means `auto` here: the parser refuses it with a clear error.
pub fn choose(cmdline: &[u8], variable: Option<&[u8]>) -> Choice {
    let mut arguments = cmdline.split(|byte| *byte == 0).skip(1);
    let mut flag = None;
    let mut command = None;
    while let Some(argument) = arguments.next() {
        if argument == b"--" {
            break;
        }
        if argument == FLAG.as_bytes() {
            flag = arguments.next();
        } else if let Some(value) = argument
            .strip_prefix(FLAG.as_bytes())
            .and_then(|rest| rest.strip_prefix(b"="))
        {
            flag = Some(value);
        } else if command.is_none() && is_command(argument) {
            command = Some(argument);
        }
    }
    match flag.or(variable) {
        Some(b"mimalloc") => Choice::Mimalloc,
        Some(b"system") => Choice::System,
        _ => match command {
            Some(command) if names(CONSUMER_COMMANDS, command) => Choice::Mimalloc,
            _ => Choice::System,
        },
    }
}

/// The allocator a parsed command line asks for: `allocator` is the `--allocator` value the
/// parser resolved (flag or variable), `command` the subcommand's name. What [`choose`] decides
/// from the raw command line should be this; the binary warns where it is not.
pub fn expected(allocator: &str, command: Option<&str>) -> Choice {
    match allocator {
        "mimalloc" => Choice::Mimalloc,
        "system" => Choice::System,
        _ => match command {
            Some(command) if names(CONSUMER_COMMANDS, command.as_bytes()) => Choice::Mimalloc,
            _ => Choice::System,
        },
    }
}

fn is_command(argument: &[u8]) -> bool {
    names(CONSUMER_COMMANDS, argument) || names(OTHER_COMMANDS, argument)
}

fn names(commands: &[&str], argument: &[u8]) -> bool {
    commands
        .iter()
        .any(|command| command.as_bytes() == argument)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmdline(arguments: &[&str]) -> Vec<u8> {
        arguments
            .iter()
            .flat_map(|argument| argument.bytes().chain([0]))
            .collect()
    }

    #[test]
    fn a_consumer_subcommand_runs_on_mimalloc_and_the_rest_on_the_system_allocator() {
        for command in CONSUMER_COMMANDS {
            let line = cmdline(&["/usr/bin/aftercart", "--log-format=json", command]);
            assert_eq!(choose(&line, None), Choice::Mimalloc, "{command}");
        }
        for command in ["ingress", "dev", "loadgen", "send", "docs", "topics"] {
            let line = cmdline(&["aftercart", command, "--help"]);
            assert_eq!(choose(&line, None), Choice::System, "{command}");
        }
        assert_eq!(choose(&cmdline(&["aftercart"]), None), Choice::System);
        assert_eq!(choose(b"", None), Choice::System);
    }

    #[test]
    fn a_flag_value_before_the_subcommand_is_not_taken_for_it() {
        let line = cmdline(&[
            "aftercart",
            "--log-format",
            "json",
            "--log",
            "info",
            "audiences",
        ]);
        assert_eq!(choose(&line, None), Choice::Mimalloc);
        let help = cmdline(&["aftercart", "help", "referrals"]);
        assert_eq!(choose(&help, None), Choice::System);
    }

    #[test]
    fn only_the_first_argument_naming_a_subcommand_counts() {
        // `ingress` is the subcommand; `referrals` is an argument of it.
        let line = cmdline(&["aftercart", "ingress", "referrals"]);
        assert_eq!(choose(&line, None), Choice::System);
        // The program's own name is never the subcommand.
        assert_eq!(
            choose(&cmdline(&["referrals", "ingress"]), None),
            Choice::System
        );
    }

    #[test]
    fn the_flag_wins_over_the_variable_and_both_over_the_subcommand() {
        let ingress = cmdline(&["aftercart", "--allocator", "mimalloc", "ingress"]);
        assert_eq!(choose(&ingress, Some(b"system")), Choice::Mimalloc);
        let referrals = cmdline(&["aftercart", "referrals", "--allocator=system"]);
        assert_eq!(choose(&referrals, Some(b"mimalloc")), Choice::System);
        let plain = cmdline(&["aftercart", "referrals"]);
        assert_eq!(choose(&plain, Some(b"system")), Choice::System);
        assert_eq!(
            choose(&cmdline(&["aftercart", "ingress"]), Some(b"mimalloc")),
            Choice::Mimalloc
        );
    }

    #[test]
    fn auto_or_a_value_the_parser_will_refuse_chooses_by_subcommand() {
        let referrals = cmdline(&["aftercart", "--allocator", "auto", "referrals"]);
        assert_eq!(choose(&referrals, Some(b"system")), Choice::Mimalloc);
        assert_eq!(
            choose(&cmdline(&["aftercart", "referrals"]), Some(b"jemalloc")),
            Choice::Mimalloc
        );
        // A flag without its value, at the end.
        assert_eq!(
            choose(&cmdline(&["aftercart", "ingress", "--allocator"]), None),
            Choice::System
        );
    }

    #[test]
    fn a_parsed_command_line_expects_what_the_raw_one_chooses() {
        for (arguments, variable, allocator, command) in [
            (
                &["aftercart", "referrals"][..],
                None,
                "auto",
                Some("referrals"),
            ),
            (
                &["aftercart", "ingress"],
                Some(&b"mimalloc"[..]),
                "mimalloc",
                Some("ingress"),
            ),
            (
                &["aftercart", "--allocator=system", "nudges"],
                None,
                "system",
                Some("nudges"),
            ),
            (&["aftercart", "dev"], None, "auto", Some("dev")),
            (&["aftercart"], None, "auto", None),
        ] {
            assert_eq!(
                choose(&cmdline(arguments), variable),
                expected(allocator, command),
                "{arguments:?}"
            );
        }
        // Where they differ, the binary warns: a flag's value taken for the subcommand.
        let raw = choose(
            &cmdline(&["aftercart", "--log", "ingress", "referrals"]),
            None,
        );
        assert_ne!(raw, expected("auto", Some("referrals")));
    }

    #[test]
    fn arguments_after_a_double_dash_are_not_read() {
        let line = cmdline(&["aftercart", "--", "referrals", "--allocator=mimalloc"]);
        assert_eq!(choose(&line, None), Choice::System);
    }
}
