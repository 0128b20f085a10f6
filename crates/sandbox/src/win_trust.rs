//! Windows' counterpart of the cache's Unix check (owner is this user, no
//! one else may write): the object's owner is this user (or the system or
//! the administrators, who can do anything anyway), it is no link or
//! junction, and no entry of its access list lets anyone else write it,
//! add to it, delete it, or change its owner or list.

use std::os::windows::ffi::OsStrExt;
use std::path::Path;
use windows_sys::Win32::Foundation::{CloseHandle, ERROR_SUCCESS, HANDLE, LocalFree};
use windows_sys::Win32::Security::Authorization::{GetNamedSecurityInfoW, SE_FILE_OBJECT};
use windows_sys::Win32::Security::{
    ACCESS_ALLOWED_ACE, ACE_HEADER, ACL, DACL_SECURITY_INFORMATION, EqualSid, GetAce,
    GetTokenInformation, INHERIT_ONLY_ACE, IsWellKnownSid, OWNER_SECURITY_INFORMATION,
    PSECURITY_DESCRIPTOR, PSID, TOKEN_QUERY, TOKEN_USER, TokenUser, WinBuiltinAdministratorsSid,
    WinCreatorOwnerSid, WinLocalSystemSid,
};
use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

const ACCESS_ALLOWED_ACE_TYPE: u8 = 0;
/// Writing data, adding files or directories, deleting children or the
/// object, changing its access list or owner, and the generic forms.
const WRITE_RIGHTS: u32 = 0x0002 // FILE_WRITE_DATA / FILE_ADD_FILE
    | 0x0004 // FILE_APPEND_DATA / FILE_ADD_SUBDIRECTORY
    | 0x0040 // FILE_DELETE_CHILD
    | 0x0001_0000 // DELETE
    | 0x0004_0000 // WRITE_DAC
    | 0x0008_0000 // WRITE_OWNER
    | 0x1000_0000 // GENERIC_ALL
    | 0x4000_0000; // GENERIC_WRITE

/// This process's user, as the bytes of its SID.
fn current_user() -> Option<Vec<u8>> {
    // SAFETY: plain Win32 calls with buffers of the sizes they say.
    unsafe {
        let mut token: HANDLE = std::ptr::null_mut();
        if OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) == 0 {
            return None;
        }
        let mut buf = vec![0u8; 256];
        let mut len = 0u32;
        let ok = GetTokenInformation(
            token,
            TokenUser,
            buf.as_mut_ptr().cast(),
            buf.len() as u32,
            &mut len,
        );
        CloseHandle(token);
        if ok == 0 {
            return None;
        }
        let user = &*(buf.as_ptr() as *const TOKEN_USER);
        let sid = user.User.Sid;
        let len = windows_sys::Win32::Security::GetLengthSid(sid) as usize;
        Some(std::slice::from_raw_parts(sid as *const u8, len).to_vec())
    }
}

/// Whether `path` is private to this user (see the module).
pub fn private(path: &Path) -> bool {
    use std::os::windows::fs::MetadataExt;
    const FILE_ATTRIBUTE_REPARSE_POINT: u32 = 0x400;
    // A link or a junction (both reparse points) is never trusted.
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    if meta.file_type().is_symlink() || meta.file_attributes() & FILE_ATTRIBUTE_REPARSE_POINT != 0 {
        return false;
    }
    // Asked once per process: every directory of every cache lookup needs it.
    static ME: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();
    let Some(me) = ME.get_or_init(current_user) else {
        return false;
    };
    let wide: Vec<u16> = path.as_os_str().encode_wide().chain([0]).collect();
    // SAFETY: the descriptor is freed once; the pointers into it are read
    // only before that, within the sizes the ACL says.
    unsafe {
        let mut owner: PSID = std::ptr::null_mut();
        let mut dacl: *mut ACL = std::ptr::null_mut();
        let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
        let err = GetNamedSecurityInfoW(
            wide.as_ptr(),
            SE_FILE_OBJECT,
            OWNER_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION,
            &mut owner,
            std::ptr::null_mut(),
            &mut dacl,
            std::ptr::null_mut(),
            &mut sd,
        );
        if err != ERROR_SUCCESS {
            return false;
        }
        // Only read (EqualSid), though the API's type is mutable.
        let me_sid: PSID = me.as_ptr().cast_mut().cast();
        let trusted_sid = |sid: PSID| {
            EqualSid(sid, me_sid) != 0
                || IsWellKnownSid(sid, WinLocalSystemSid) != 0
                || IsWellKnownSid(sid, WinBuiltinAdministratorsSid) != 0
        };
        let mut ok = !owner.is_null() && trusted_sid(owner);
        // No list at all lets everyone do everything.
        if dacl.is_null() {
            ok = false;
        }
        if ok {
            for i in 0..u32::from((*dacl).AceCount) {
                let mut ace: *mut core::ffi::c_void = std::ptr::null_mut();
                if GetAce(dacl, i, &mut ace) == 0 {
                    ok = false;
                    break;
                }
                let header = &*(ace as *const ACE_HEADER);
                if header.AceType != ACCESS_ALLOWED_ACE_TYPE
                    || u32::from(header.AceFlags) & INHERIT_ONLY_ACE != 0
                {
                    continue;
                }
                let allowed = &*(ace as *const ACCESS_ALLOWED_ACE);
                let sid: PSID = (&allowed.SidStart as *const u32).cast_mut().cast();
                if allowed.Mask & WRITE_RIGHTS != 0
                    && !trusted_sid(sid)
                    && IsWellKnownSid(sid, WinCreatorOwnerSid) == 0
                {
                    ok = false;
                    break;
                }
            }
        }
        LocalFree(sd);
        ok
    }
}
