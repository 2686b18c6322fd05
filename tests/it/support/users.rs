//! Users as GoTrue writes them, and what tests read back.

use tokio_postgres::Client;
use uuid::Uuid;

use super::APP_ROLE;

/// What GoTrue would insert for one user; tests build these and [`insert_users`] writes them.
#[derive(Clone, Debug)]
pub struct AuthUser {
    pub id: Uuid,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub is_anonymous: bool,
    pub user_meta: Option<serde_json::Value>,
    /// Whether created_at is set (GoTrue always sets it; imports may not).
    pub created_at: Option<chrono::DateTime<chrono::Utc>>,
    pub deleted: bool,
}

impl AuthUser {
    pub fn email(address: &str) -> AuthUser {
        AuthUser {
            id: Uuid::new_v4(),
            email: Some(address.to_string()),
            phone: None,
            is_anonymous: false,
            user_meta: Some(serde_json::json!({})),
            created_at: Some(chrono::Utc::now()),
            deleted: false,
        }
    }
}

/// Inserts users the way GoTrue does: as `supabase_auth_admin`, which has no privilege on
/// `public.user_profiles`, so the trigger works only through SECURITY DEFINER.
pub async fn insert_users(
    client: &Client,
    users: &[AuthUser],
) -> Result<(), tokio_postgres::Error> {
    client.batch_execute("SET ROLE supabase_auth_admin").await?;
    let result = async {
        for u in users {
            client
                .execute(
                    "INSERT INTO auth.users (instance_id, id, aud, role, email, phone,
                         encrypted_password, confirmation_token, recovery_token,
                         email_change_token_new, email_change, raw_app_meta_data,
                         raw_user_meta_data, created_at, updated_at, is_anonymous, deleted_at)
                     VALUES ('00000000-0000-0000-0000-000000000000', $1, 'authenticated',
                         'authenticated', $2, $3, '', '', '', '', '',
                         '{\"provider\": \"email\"}', $4, $5, $5, $6,
                         CASE WHEN $7 THEN now() END)",
                    &[
                        &u.id,
                        &u.email,
                        &u.phone,
                        &u.user_meta,
                        &u.created_at,
                        &u.is_anonymous,
                        &u.deleted,
                    ],
                )
                .await?;
        }
        Ok(())
    }
    .await;
    client.batch_execute("RESET ROLE").await?;
    result
}

/// What a hosted Supabase project has in force: whatever the migration role creates in
/// `public` is granted ALL to anon, authenticated and service_role.
pub async fn supabase_default_privileges(admin: &Client) {
    admin
        .batch_execute(&format!(
            "ALTER DEFAULT PRIVILEGES FOR ROLE {APP_ROLE} IN SCHEMA public
                 GRANT ALL ON TABLES TO anon, authenticated, service_role;
             ALTER DEFAULT PRIVILEGES FOR ROLE {APP_ROLE} IN SCHEMA public
                 GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;"
        ))
        .await
        .expect("setting Supabase's default privileges");
}

/// Number of rows in a table (a trusted name from the test itself).
pub async fn count(client: &Client, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap_or_else(|e| panic!("counting {table}: {e}"))
        .get(0)
}
