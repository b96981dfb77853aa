//! Catalog rows whose columns changed between majors: a database's locale
//! and login event triggers, inheritance.

use pgrx::pg_sys;

// Exported by the server but not in pgrx's bindings. PostgreSQL reports
// errors by longjmp, not unwinding, so they are declared "C" and every call
// goes through pg_guard_ffi_boundary, which catches the longjmp and turns it
// into a Rust-safe error.
unsafe extern "C" {
    fn find_all_inheritors(
        parent: pg_sys::Oid,
        lockmode: std::ffi::c_int,
        parents: *mut *mut pg_sys::List,
    ) -> *mut pg_sys::List;
}

/// A table and all its partitions and inheritance children (no new locks).
///
/// # Safety
/// Inside a transaction.
pub unsafe fn table_and_inheritors(table: pg_sys::Oid) -> *mut pg_sys::List {
    // SAFETY: guaranteed by the caller.
    unsafe {
        pg_sys::ffi::pg_guard_ffi_boundary(|| {
            find_all_inheritors(table, pg_sys::NoLock as i32, std::ptr::null_mut())
        })
    }
}

/// Locale options of `CREATE DATABASE` that reproduce a source database's.
pub struct DatabaseLocale {
    pub encoding: String,
    pub collate: String,
    pub ctype: String,
    /// `c` (libc), `i` (ICU), `b` (builtin, 17+).
    pub provider: u8,
    /// The ICU or builtin locale (`daticulocale` up to 16, `datlocale` from 17).
    pub locale: Option<String>,
    /// ICU tailoring rules (16+).
    pub icu_rules: Option<String>,
}

#[cfg(before_pg17)]
const LOCALE_COLUMN: u32 = pg_sys::Anum_pg_database_daticulocale;

#[cfg(not(before_pg17))]
const LOCALE_COLUMN: u32 = pg_sys::Anum_pg_database_datlocale;

/// The name of an encoding.
fn encoding_name(encoding: i32) -> String {
    // SAFETY: returns a static string ("" for an invalid id).
    unsafe {
        #[cfg(before_pg17)]
        let name = pg_sys::pg_encoding_to_char(encoding);
        #[cfg(not(before_pg17))]
        let name = pg_sys::pg_encoding_to_char_private(encoding);
        std::ffi::CStr::from_ptr(name)
            .to_string_lossy()
            .into_owned()
    }
}

/// Reads a database's locale from its `pg_database` row.
///
/// # Safety
/// `row` must be a valid pg_database heap tuple.
pub unsafe fn database_locale(row: pg_sys::HeapTuple) -> DatabaseLocale {
    // SAFETY: guaranteed by the caller; the columns are NOT NULL except the
    // ICU/builtin locale and rules.
    unsafe {
        let form = &*(pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(row));
        let text_column = |attno: u32| -> Option<String> {
            let mut isnull = false;
            let datum = pg_sys::SysCacheGetAttr(
                pg_sys::SysCacheIdentifier::DATABASEOID as i32,
                row,
                attno as i16,
                &mut isnull,
            );
            (!isnull).then(|| {
                std::ffi::CStr::from_ptr(pg_sys::text_to_cstring(datum.cast_mut_ptr()))
                    .to_string_lossy()
                    .into_owned()
            })
        };
        #[cfg(before_pg16)]
        let icu_rules = None;
        #[cfg(not(before_pg16))]
        let icu_rules = text_column(pg_sys::Anum_pg_database_daticurules);
        DatabaseLocale {
            encoding: encoding_name(form.encoding),
            collate: text_column(pg_sys::Anum_pg_database_datcollate).unwrap_or_default(),
            ctype: text_column(pg_sys::Anum_pg_database_datctype).unwrap_or_default(),
            provider: form.datlocprovider as u8,
            locale: text_column(LOCALE_COLUMN),
            icu_rules,
        }
    }
}

/// The `CREATE DATABASE` options for a locale.
pub fn locale_options(locale: &DatabaseLocale) -> Vec<(&'static str, String)> {
    let provider = match locale.provider {
        b'i' => "icu",
        b'b' => "builtin",
        _ => "libc",
    };
    let mut options = vec![
        ("encoding", locale.encoding.clone()),
        ("lc_collate", locale.collate.clone()),
        ("lc_ctype", locale.ctype.clone()),
        ("locale_provider", provider.into()),
    ];
    match (locale.provider, &locale.locale) {
        (b'i', Some(icu)) => options.push(("icu_locale", icu.clone())),
        (b'b', Some(builtin)) => options.push(("builtin_locale", builtin.clone())),
        _ => {}
    }
    if let Some(rules) = &locale.icu_rules {
        options.push(("icu_rules", rules.clone()));
    }
    options
}

/// Whether a database has login event triggers (17+; the server skips
/// them for a database whose flag is false).
pub fn has_login_event_triggers(form: &pg_sys::FormData_pg_database) -> bool {
    #[cfg(before_pg17)]
    return {
        let _ = form;
        false
    };
    #[cfg(not(before_pg17))]
    return form.dathasloginevt;
}

/// Sets a database's login-event-trigger flag (a no-op before 17).
pub fn set_login_event_triggers(form: &mut pg_sys::FormData_pg_database, has: bool) {
    #[cfg(not(before_pg17))]
    {
        form.dathasloginevt = has;
    }
    #[cfg(before_pg17)]
    let _ = (form, has);
}
