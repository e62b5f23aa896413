//! What a guest may open in its web root: the host's own
//! `wasi:filesystem` `open-at` (of WASIp2 and of WASIp3), in place of
//! wasmtime-wasi's, which opens only regular files and directories.
//!
//! A guest's file operations run on its event loop's thread (a read from
//! the page cache takes microseconds; a hop to a blocking pool and back
//! costs more). Opening a FIFO for reading, though, waits in the kernel
//! until a writer comes, and some devices wait likewise: on the loop's
//! thread that would stop every connection of the loop, with no deadline
//! able to fire. So the host opens what the guest names without blocking
//! (`O_NONBLOCK`, beneath the preopened directory as wasmtime-wasi does,
//! through cap-primitives), looks at what it opened (`fstat` of the
//! descriptor, so a file swapped in between cannot slip past), and hands
//! the guest a regular file or a directory. Anything else (a FIFO, a
//! socket, a device) is closed again and refused with `not-permitted`,
//! logged with the request's id and counted.

use std::sync::atomic::Ordering;

use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt, OpenOptionsSyncExt};
use cap_primitives::fs::OpenOptions;
use rustix::fs::OFlags;
use tracing::warn;
use wasmtime::StoreContextMut;
use wasmtime::component::{Accessor, Linker, Resource};
use wasmtime_wasi::filesystem::{Descriptor, Dir, File};
use wasmtime_wasi::p2::bindings::filesystem::types as p2;
use wasmtime_wasi::p3::bindings::filesystem::types as p3;
use wasmtime_wasi::{OpenMode, WasiView};

use super::instance::GuestState;

/// The `wasi:filesystem/types` whose `open-at` the host defines for
/// WASIp2 guests: the version wasmtime-wasi serves, which guests built for
/// any earlier 0.2 release link to.
const P2_TYPES: &str = "wasi:filesystem/types@0.2.12";
/// The same for WASIp3 guests.
const P3_TYPES: &str = "wasi:filesystem/types@0.3.0";
/// The function both define.
const OPEN_AT: &str = "[method]descriptor.open-at";

/// Whether a guest's file operations run on the thread that runs the
/// guest; see the module's doc.
pub(crate) const ON_THE_GUESTS_THREAD: bool = true;

/// Puts the host's `open-at` in place of wasmtime-wasi's WASIp2 one in
/// `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let defined = linker.instance(P2_TYPES)?.func_wrap(
        OPEN_AT,
        |mut store: StoreContextMut<'_, GuestState>,
         (fd, path_flags, path, open_flags, flags): (
            Resource<Descriptor>,
            p2::PathFlags,
            String,
            p2::OpenFlags,
            p2::DescriptorFlags,
        )| {
            let wanted = p2_open::wanted(path_flags, open_flags, flags);
            let opened = open_at(store.data_mut(), &fd, &path, wanted)?;
            Ok((opened.map_err(p2_open::code),))
        },
    );
    linker.allow_shadowing(false);
    defined
}

/// Puts the host's `open-at` in place of wasmtime-wasi's WASIp3 one in
/// `linker`, an engine's with the component model's concurrency.
pub(crate) fn add_to_linker_p3(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let defined = linker.instance(P3_TYPES)?.func_wrap_concurrent(
        OPEN_AT,
        |accessor: &Accessor<GuestState>,
         (fd, path_flags, path, open_flags, flags): (
            Resource<Descriptor>,
            p3::PathFlags,
            String,
            p3::OpenFlags,
            p3::DescriptorFlags,
        )| {
            let wanted = p3_open::wanted(path_flags, open_flags, flags);
            // Nothing here waits: the open is done within the one call.
            let opened = accessor.with(|mut access| open_at(access.get(), &fd, &path, wanted));
            Box::pin(async move { Ok((opened?.map_err(p3_open::code),)) })
        },
    );
    linker.allow_shadowing(false);
    defined
}

/// For one version's bindings of `wasi:filesystem/types` (the two name
/// their flags and codes alike): what an `open-at` asks for, and the error
/// code of a refusal.
macro_rules! version {
    ($module:ident, $types:ident) => {
        mod $module {
            use super::{Refusal, Wanted, $types as types};

            pub(super) fn wanted(
                path_flags: types::PathFlags,
                open_flags: types::OpenFlags,
                flags: types::DescriptorFlags,
            ) -> Wanted {
                Wanted {
                    follow: path_flags.contains(types::PathFlags::SYMLINK_FOLLOW),
                    create: open_flags.contains(types::OpenFlags::CREATE),
                    exclusive: open_flags.contains(types::OpenFlags::EXCLUSIVE),
                    truncate: open_flags.contains(types::OpenFlags::TRUNCATE),
                    directory: open_flags.contains(types::OpenFlags::DIRECTORY),
                    read: flags.contains(types::DescriptorFlags::READ),
                    write: flags.contains(types::DescriptorFlags::WRITE),
                    sync: flags.intersects(
                        types::DescriptorFlags::FILE_INTEGRITY_SYNC
                            | types::DescriptorFlags::DATA_INTEGRITY_SYNC
                            | types::DescriptorFlags::REQUESTED_WRITE_SYNC,
                    ),
                }
            }

            pub(super) fn code(refusal: Refusal) -> types::ErrorCode {
                match refusal {
                    Refusal::Io(err) => types::ErrorCode::from(err),
                    Refusal::Unsupported => types::ErrorCode::Unsupported,
                    Refusal::Invalid => types::ErrorCode::Invalid,
                    Refusal::NotPermitted => types::ErrorCode::NotPermitted,
                    Refusal::NotDirectory => types::ErrorCode::NotDirectory,
                }
            }
        }
    };
}

version!(p2_open, p2);
version!(p3_open, p3);

/// What an `open-at` asks for, from either version's flags.
#[derive(Debug, Clone, Copy)]
struct Wanted {
    /// Follow a symbolic link at the end of the path.
    follow: bool,
    create: bool,
    exclusive: bool,
    truncate: bool,
    /// Fail unless it is a directory.
    directory: bool,
    read: bool,
    write: bool,
    /// Any of the synchronized-write flags.
    sync: bool,
}

/// Why an open gave the guest no descriptor: the error code it gets.
#[derive(Debug)]
enum Refusal {
    /// As the system said (no such file, a loop of links, …).
    Io(std::io::Error),
    Unsupported,
    Invalid,
    NotPermitted,
    NotDirectory,
}

impl From<std::io::Error> for Refusal {
    fn from(err: std::io::Error) -> Refusal {
        Refusal::Io(err)
    }
}

/// What a guest's `open-at` on `fd` gets: a new descriptor, or why not; a
/// descriptor that is not in the guest's table traps, as in wasmtime-wasi.
fn open_at(
    state: &mut GuestState,
    fd: &Resource<Descriptor>,
    path: &str,
    wanted: Wanted,
) -> wasmtime::Result<Result<Resource<Descriptor>, Refusal>> {
    let dir = match state.ctx().table.get(fd)? {
        Descriptor::Dir(dir) => dir.clone(),
        Descriptor::File(_) => return Ok(Err(Refusal::NotDirectory)),
    };
    let opened = match open(&dir, path, wanted) {
        Ok(Opened::Descriptor(opened)) => opened,
        Ok(Opened::NotAFile(kind)) => {
            let id = state.request.load(Ordering::Relaxed);
            warn!(
                id,
                path,
                kind,
                "refused a guest's open of something that is neither a regular file nor a \
                 directory (it could block the server's thread); serve only regular files \
                 from the web root"
            );
            state.refused_opens.inc();
            return Ok(Err(Refusal::NotPermitted));
        }
        Err(refusal) => return Ok(Err(refusal)),
    };
    Ok(Ok(state.ctx().table.push(opened)?))
}

/// What an open found.
enum Opened {
    /// A regular file or a directory, for the guest.
    Descriptor(Descriptor),
    /// Something of this kind, neither, closed again.
    NotAFile(&'static str),
}

/// Opens `path` beneath `dir` with wasmtime-wasi's checks and options,
/// without blocking, and keeps it only if it is a regular file or a
/// directory.
fn open(dir: &Dir, path: &str, wanted: Wanted) -> Result<Opened, Refusal> {
    let mut options = OpenOptions::new();
    options.nonblock(true);
    let mut mode = OpenMode::empty();
    if wanted.create {
        if wanted.exclusive {
            options.create_new(true);
        } else {
            options.create(true);
        }
    }
    if wanted.truncate {
        options.truncate(true);
    }
    if wanted.create || wanted.truncate || wanted.write {
        options.write(true);
        mode |= OpenMode::WRITE;
    }
    // A descriptor opened for neither can be read, as wasmtime-wasi opens
    // it: the permissions decide what it may do later.
    if wanted.read || !wanted.write {
        options.read(true);
        mode |= OpenMode::READ;
    }
    options.follow(if wanted.follow {
        FollowSymlinks::Yes
    } else {
        FollowSymlinks::No
    });
    if wanted.sync {
        return Err(Refusal::Unsupported);
    }
    if wanted.directory && (wanted.create || wanted.exclusive || wanted.truncate) {
        return Err(Refusal::Invalid);
    }
    if dir.perms.write_not_permitted() && mode.contains(OpenMode::WRITE) {
        return Err(Refusal::NotPermitted);
    }

    let file = cap_primitives::fs::open(&dir.dir, path.as_ref(), &options)?;
    let kind = file.metadata()?.file_type();
    if kind.is_dir() {
        return Ok(Opened::Descriptor(Descriptor::Dir(Dir::new(
            file,
            dir.perms,
            mode,
            ON_THE_GUESTS_THREAD,
        ))));
    }
    if wanted.directory {
        return Err(Refusal::NotDirectory);
    }
    if !kind.is_file() {
        return Ok(Opened::NotAFile(kind_name(&kind)));
    }
    // Reads of a regular file never wait on a writer; the flag is cleared
    // all the same, so the file behaves as wasmtime-wasi's would.
    let status = rustix::fs::fcntl_getfl(&file).map_err(std::io::Error::from)?;
    rustix::fs::fcntl_setfl(&file, status - OFlags::NONBLOCK).map_err(std::io::Error::from)?;
    Ok(Opened::Descriptor(Descriptor::File(File::new(
        file,
        dir.perms,
        mode,
        ON_THE_GUESTS_THREAD,
    ))))
}

/// A name for the kind of file `kind` is, in the log.
fn kind_name(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_fifo() {
        "fifo"
    } else if kind.is_socket() {
        "socket"
    } else if kind.is_char_device() {
        "character device"
    } else if kind.is_block_device() {
        "block device"
    } else {
        "other"
    }
}
