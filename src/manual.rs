//! Shell completions and the man page, generated from the command line's
//! own definition (`clap_complete`, `clap_mangen`), so they never drift
//! from it. The Debian package installs them.

use std::io::Write;

use clap_complete::Shell;

/// Writes the completion script for `shell` of `command` to `out`.
pub fn completions(mut command: clap::Command, shell: Shell, out: &mut impl Write) {
    let name = command.get_name().to_owned();
    clap_complete::generate(shell, &mut command, name, out);
}

/// The man page's EXIT STATUS section: the codes `cli` returns.
const EXIT_STATUS: [(&str, &str); 3] = [
    ("0", "Success: the daemon stopped cleanly, every run completed, the configuration is valid."),
    ("1", "A run failed, a file was refused, or a dependency (MongoDB, RabbitMQ, the destination) could not be reached; the error is on stderr."),
    ("2", "A usage or configuration error, said in one line on stderr that names the key or argument."),
];

/// Writes the man page (roff, section 1) of `command` to `out`: one page
/// that describes every subcommand itself (no `esr-exporter-run(1)` and
/// the like, which are not built), and the exit codes.
///
/// # Errors
/// When `out` cannot be written.
pub fn man_page(command: clap::Command, out: &mut impl Write) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(command.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    render_commands(&command, out)?;
    render_exit_status(out)?;
    man.render_version_section(out)
}

/// `COMMANDS`: each subcommand's name, usage and help, on this page.
fn render_commands(command: &clap::Command, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, ".SH COMMANDS")?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let usage = sub.clone().render_usage().to_string();
        let usage = usage.trim_start_matches("Usage: ");
        writeln!(out, ".TP")?;
        writeln!(
            out,
            "\\fB{}\\fR",
            roff_text(&format!("{} {usage}", command.get_name()))
        )?;
        let help = sub.get_long_about().or(sub.get_about());
        writeln!(
            out,
            "{}",
            roff_text(&help.map(ToString::to_string).unwrap_or_default())
        )?;
    }
    Ok(())
}

fn render_exit_status(out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, ".SH \"EXIT STATUS\"")?;
    for (code, meaning) in EXIT_STATUS {
        writeln!(out, ".TP\n{code}\n{}", roff_text(meaning))?;
    }
    Ok(())
}

/// `text` safe in a roff body line: backslashes and hyphens escaped, and
/// no line that starts with a control character.
fn roff_text(text: &str) -> String {
    text.replace('\\', "\\e")
        .replace('-', "\\-")
        .lines()
        .map(|line| match line.chars().next() {
            Some('.' | '\'') => format!("\\&{line}"),
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}
