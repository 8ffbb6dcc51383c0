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

/// Writes the man page (roff, section 1) of `command` to `out`.
///
/// # Errors
/// When `out` cannot be written.
pub fn man_page(command: clap::Command, out: &mut impl Write) -> std::io::Result<()> {
    clap_mangen::Man::new(command).render(out)
}
